// Starts Swagger UI on /docs. A file of its own, not an inline script, so that the page's
// Content-Security-Policy allows scripts from the server only; the document's URL comes from
// the page.
const root = document.getElementById('swagger-ui');

window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  domNode: root,
  deepLinking: true,
  layout: 'BaseLayout',
  presets: [SwaggerUIBundle.presets.apis],
  showExtensions: true,
  showCommonExtensions: true,
  // No validity badge: it would load an image from validator.swagger.io.
  validatorUrl: null,
});
