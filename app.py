"""The review app on a Hugging Face Space (or anywhere): the same app as `wildreid app`, configured by
environment variables instead of flags.

    WILDREID_GALLERY   gallery folder (required), e.g. a folder of the Space's repository
    WILDREID_MODEL     model folder or Hub id (default: the model the gallery was built with)
    WILDREID_METHOD    auto | global | local | fusion (default auto; as for `wildreid identify`)
    WILDREID_TOP_K     candidates shown (default 5)
    WILDREID_REVIEW_DIR  audit log and stored query photos (default <gallery>.review)
    WILDREID_APP_AUTH  user:password a browser must log in with (a Space secret; default: no login)

Spaces set GRADIO_SERVER_NAME=0.0.0.0 (the app then warns that it is reachable from the network: set
WILDREID_APP_AUTH, or make the Space private); elsewhere the app binds to 127.0.0.1.
"""
import os

from wildreid.identification.review import open_session
from wildreid.identification.review.serving import resolve_auth
from wildreid.identification.review.ui import launch

if __name__ == "__main__":
    gallery = os.environ.get("WILDREID_GALLERY")
    if not gallery:
        raise SystemExit("set WILDREID_GALLERY to the gallery folder (see the docstring of app.py)")
    try:
        auth = resolve_auth(None)  # WILDREID_APP_AUTH, checked before the model loads
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    session = open_session(gallery, os.environ.get("WILDREID_MODEL") or None,
                           method=os.environ.get("WILDREID_METHOD", "auto"),
                           top_k=int(os.environ.get("WILDREID_TOP_K", "5")),
                           review_dir=os.environ.get("WILDREID_REVIEW_DIR") or None)
    launch(session, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), auth=auth)
