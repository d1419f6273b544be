"""The aiohttp gateway: client websockets, the Yjs endpoint and the Spotify-shaped REST surface."""
