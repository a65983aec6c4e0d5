"""Similarity search: embed a folder's images into an index, then find the images nearest to a query.

Example:
    >>> from cnnkit.deploy.index import build_index, open_index
    >>> build_index("efficientnet_lite0", "photos", pretrained=True, name="photos")
    >>> index = open_index("runs/photos")
    >>> scores, rows = index.search(index.embedder().embed_images(["query.jpg"]), k=5)
"""

from cnnkit.deploy.index.builder import build_index
from cnnkit.deploy.index.embedder import Embedder, load_embedder
from cnnkit.deploy.index.store import SearchIndex, open_index

__all__ = ["Embedder", "SearchIndex", "build_index", "load_embedder", "open_index"]
