"""One client per backend kind, registered in one dict (DESIGN.md, Backends)."""
from .base import BackendError, Client, Done, Failed, Health, Progress, RemoteOutput
from .comfyui import ComfyUIClient

CLIENTS = {
    "comfyui": ComfyUIClient,
}


def client_for(kind: str, **options) -> Client:
    try:
        factory = CLIENTS[kind]
    except KeyError:
        raise BackendError(f"No client for backend kind {kind!r}", retryable=False)
    return factory(**options)


__all__ = ["BackendError", "Client", "Done", "Failed", "Health", "Progress", "RemoteOutput", "client_for", "CLIENTS"]
