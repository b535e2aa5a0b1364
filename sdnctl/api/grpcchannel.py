"""grpcio channels to the controller, for the daemons, the tests and the benchmarks.

Design note. An agent (and a test or a benchmark that plays one) keeps its channel open for
hours, with keepalives, a Watch stream and concurrent calls, so it uses grpcio; the CLI uses
``sdnctl.api.client`` over ``sdnctl.api.wire`` instead, which starts without grpcio's imports.
Both dial the same way: a unix socket is plain (the socket's mode is the access control), TCP is
always mutual TLS with the files given, or those of ``$SDNCTL_TLS_CERT``, ``$SDNCTL_TLS_KEY``
and ``$SDNCTL_TLS_CA``.
"""

from __future__ import annotations

import grpc

from sdnctl.api.tlsfiles import TlsFiles, client_tls


def open_channel(address: str, tls: TlsFiles | None = None,
                 options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    """A channel to the controller at ``address`` (``unix:/path`` or ``[tcp:]host:port``).

    TCP is mutual TLS: with ``tls``, else the environment's files (:func:`tls_from_env`), else
    CommandError, never plaintext.
    """
    options = options or []
    tls = client_tls(address, tls)
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    cert, key, ca = tls.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                               certificate_chain=cert)
    return grpc.secure_channel(address.removeprefix("tcp:").removeprefix("//"), credentials,
                               options=options)
