"""gunicorn settings for ``chatgpt-login serve`` and ``secrets-server``
(``gunicorn -c service/gunicorn_conf.py``).

Nothing here imports the settings object or the application: gunicorn's master only supervises,
and what it imports it keeps for the service's whole life (pydantic alone is 15 MiB of it). The
values that come from the settings (bind address, worker timeout) are on the command line
``service/cli.py`` builds. The master loads the worker class below, which imports gunicorn only.
"""

import gc

# One worker with threads: the operator API serves a few requests a minute, and a second worker
# would double the memory taken from the agent's container for throughput it never uses
# (BENCHMARKS.md, "Service memory"). Threads because a relay waits on a login program while
# others keep answering; each client's reading bounded so that slow clients cannot hold them
# (service/worker.py). The master still replaces a worker that dies or hangs.
worker_class = "service.worker.BoundedThreadWorker"
workers = 1
# An event stream (GET /v1/events) holds a thread for as long as it is open, so the streams get
# threads of their own: at most EVENT_STREAMS of them (service/routes/events.py refuses more),
# and the API always keeps API_THREADS. A thread is started only when first needed, so the
# stream threads cost nothing until streams open (BENCHMARKS.md, "Event streams").
API_THREADS = 8
EVENT_STREAMS = 50
threads = API_THREADS + EVENT_STREAMS
# The CLI passes --timeout: above every outbound wait (a secrets API write with all its
# retries, or a complete). This default is for gunicorn run by hand with this file.
timeout = 120
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
# Control characters in a request's path are escaped, so that no caller can forge a line.
logger_class = "service.access_log.AccessLogger"
loglevel = "info"
# No control socket (gunicorn 25+ makes one in ~/.gunicorn by default, one path for every
# gunicorn of the user): nothing here manages workers at runtime.
control_socket_disable = True


def pre_fork(server: object, worker: object) -> None:
    """The worker shares the master's memory until it writes to it, and a collection in the
    worker would write to every object it inherited (the collector's bookkeeping is kept in
    each object's header); frozen objects are never collected, so those pages stay shared."""
    gc.freeze()
