"""The WSGI application gunicorn serves (``service.wsgi:app``)."""

from service.app import create_app
from service.settings import ServiceSettings

app = create_app(ServiceSettings.from_env())
