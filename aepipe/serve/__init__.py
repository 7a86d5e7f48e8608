"""The search service (``aepipe serve-search``): a run kept loaded behind a JSON API and a small web
page. FastAPI is imported only by aepipe.serve.app, which the CLI imports when the command runs."""
