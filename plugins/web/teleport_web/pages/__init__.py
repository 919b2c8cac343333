"""The pages: each module here defines ``routes(web: Web) -> list[BaseRoute]`` and is found by
:meth:`teleport_web.framework.Web.routes` (no list to edit when a page is added: docs/web.md)."""
