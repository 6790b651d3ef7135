"""The WSGI application gunicorn serves (``service.wsgi:app``).

Imported in each worker after the fork (``serve`` runs one), so each worker starts its own
keep-alive thread; only the one holding the leader lock works (see :mod:`service.keepalive`):
the lock also keeps a second ``serve`` on the same state directory from working alongside.
"""

from service.app import create_app
from service.keepalive import KeepAlive
from service.settings import ServiceSettings

settings = ServiceSettings.from_env()
app = create_app(settings)
KeepAlive(settings, app.extensions["chatgpt_login"].store).start()
