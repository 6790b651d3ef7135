"""The state directory's layout: the name of everything in it, once.

The state directory is ``CHATGPT_LOGIN_STATE_DIR`` (default ``~/.local/state/chatgpt-login``),
0700, every file in it 0600. The agent's commands and the service share it.
"""

# The sign-in (skill/)
LOGIN = "login.json"  # the attempt: id, driver, status, its link while live (skill.attempt)
TMUX_SOCKET = "tmux.sock"  # our private tmux server, where login programs run
LOGS = "logs"  # one pane log per live attempt, removed when it ends
WORK = "work"  # one private working directory per live attempt, removed when it ends
PREMADE = "premade.json"  # in an attempt's working directory: its premade link (skill.premade)
LOGOUT_PENDING = "logout.pending"  # a logout made while the service was down (skill.signout)
API_KEY_FINGERPRINT = "api_key.sha256"  # which API key a sign-in brought (skill.apikey)
EVENTS = "events.jsonl"  # the event journal (skill.events)

# The service (service/)
SERVICE_TOKEN = "service.token"  # noqa: S105 - a file name: the token for local callers
SERVICE_URL = "service.url"  # where `serve` listens, for this machine's callers
SERVICE_STATE = "service.json"  # the service's own record: last persisted, pending, conflicts
METRICS = "metrics.json"  # counters shared by the workers
HOLDER_ID = "holder.id"  # this holder's id among the containers sharing the credential
KEEPALIVE_LOCK = "keepalive"  # flock: which worker's keep-alive leads
SERVING = "serving.lock"  # flock: held for a service's whole life, one service per directory
SECRETS_FILE = "secrets.json"  # the store itself, when no secrets API or Vault is configured
HOOKED = "hooked.id"  # the last event the on-change hook ran for (service.hook)
HOOK_RUNNING = "hook.pid"  # the hook's run in progress: process group and start time
