"""The server side of HTTP: uvicorn listeners, request limits, TLS contexts, client certificates.

    server.py        BrokerServer: the main and ops listeners around one app, graceful shutdown
    limits.py        limits on the request head, refused as contract JSON in uvicorn's protocol
    tls.py           the main listener's TLS context, reloaded in place when its files change
    certificates.py  the verified client certificate, from the handshake into the ASGI scope
    errors.py        the contract's error body, for the listeners' refusals and for app/api

Nothing here imports `app.main` or `app.api`: the composition root hands `BrokerServer` the app.
"""
