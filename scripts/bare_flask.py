"""The baseline for scripts/bench_api.py: a Flask app that returns a constant, served under the
same gunicorn config as the service (``gunicorn -c service/gunicorn_conf.py bare_flask:app``)."""

from flask import Flask, Response, jsonify

app = Flask(__name__)


@app.get("/constant")
def constant() -> Response:
    return jsonify(status="not_logged_in")


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")
