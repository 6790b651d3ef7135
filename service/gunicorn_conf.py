"""gunicorn settings for ``chatgpt-login serve`` (``gunicorn -c service/gunicorn_conf.py``)."""

from service.settings import ServiceSettings

_settings = ServiceSettings.from_env()

bind = _settings.bind
# Threads (a relay waits on a login program; others keep answering), each client's reading
# bounded so that slow clients cannot hold them (service/worker.py).
worker_class = "service.worker.BoundedThreadWorker"
workers = 2
threads = 4
# Above every outbound wait: a secrets API write with all its retries, or a complete.
timeout = int(max(_settings.secrets_deadline, _settings.complete_timeout) + 30)
# Below a container's stop grace period (docker's default is 10 s).
graceful_timeout = 8
keepalive = 5
limit_request_line = 8190
limit_request_fields = 50
limit_request_field_size = 8190
accesslog = "-"
# %(U)s is the path without the query string: nothing secret reaches the access log.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss'
errorlog = "-"
loglevel = "info"
# No control socket (gunicorn 25+ makes one in ~/.gunicorn by default, one path for every
# gunicorn of the user): nothing here manages workers at runtime.
control_socket_disable = True
