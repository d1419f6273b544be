"""spotipy and tekore, unmodified, pointed at a Syncopate server (shared by the REST test modules)."""
import spotipy
import tekore as tk

SPOTIFY = "https://api.spotify.com/v1/"


class Rebase(tk.ExtendingSender):
    """tekore's own extension point (a Sender) pointing its fixed api.spotify.com base at us."""

    def __init__(self, base: str) -> None:
        super().__init__(None)
        self.base = base

    def send(self, request):
        if request.url.startswith(SPOTIFY):
            request.url = self.base + request.url[len(SPOTIFY):]
        return self.sender.send(request)


def spotipy_client(url: str, token: str):
    sp = spotipy.Spotify(auth=token, requests_timeout=10, retries=0, status_retries=0)
    sp.prefix = url + "/v1/"
    return sp


def tekore_client(url: str, token: str):
    return tk.Spotify(token, sender=Rebase(url + "/v1/"))
