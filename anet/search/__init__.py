"""Use the champion: the served model, gallery indexes, search, and the search page.

* ``predictor`` - images (bytes, base64, uint8 arrays) -> embedding + attribute probabilities by name
* ``served`` - log that model to MLflow (register step) and load a registered version back
* ``served_model`` - the MLflow models-from-code entry (run by MLflow, never imported here)
* ``index`` - a faiss index of a gallery (a prepared test set or a folder) with its metadata table
* ``query`` - embed a query, rank with attribute / camera filters, draw a contact sheet
* ``study`` - how filtering by the query's own predicted attributes changes mAP and R1
* ``web`` - the FastAPI search page (``make serve``)

Import from the sub-modules::

    from anet.search.served import load_predictor
    from anet.search.index import GalleryIndex
    from anet.search.query import embed_query, search
"""
