// Deployment URLs of the dashboard. null means "same origin as the page":
// apiBaseUrl -> `${location.origin}/api/v1`, realtimeUrl -> `${location.origin}/realtime/ticks`.
// `tickhub ui build --api-base-url URL --realtime-url URL` rewrites this file for static hosting.
export default {apiBaseUrl: null, realtimeUrl: null};
