"""`faramir serve`: a curator's gallery over the cache (a FastAPI app and a static page).

Another face, like `cli/`: it calls the same `store` functions and holds no query logic of its own.
`gallery.app.create_app(db)` builds the app (the page, the errors, the safety checks of
`faramir.gallery.safety`); `faramir.gallery.api` is its JSON API, `faramir.gallery.thumbnails` and `faramir.gallery.jobs` (finetune
in the background) its helpers. The page lives in `gallery/static/` (plain HTML, CSS and
JavaScript: nothing is built or downloaded). Nothing here imports torch until a finetune starts.
"""
