"""The feeder role: synthetic and CSV-replay tick sources that post to the api's webhooks.

`synthetic` makes ticks, `client` delivers them (retries, backoff), `feeder` is the actor that
joins the two under backpressure, `replay` posts a CSV file with a resumable checkpoint.
"""
