"""`make run`: set up and serve Tollgate on a fresh machine.

Migrates the database (SQLite file by default), creates a demo key and prints it with a curl and an SDK
example, starts the bundled fake upstream when OPENAI_API_KEY is not set, and serves with gunicorn as in
production. Ctrl-C stops everything.
"""

import argparse
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def manage(*args: str, capture: bool = False) -> str:
    result = subprocess.run(
        [PY, "manage.py", *args], cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE if capture else None
    )
    return result.stdout or ""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--upstream-port", type=int, default=9100)
    args = parser.parse_args()

    fake = None
    if not os.environ.get("OPENAI_API_KEY"):
        fake = subprocess.Popen(
            [PY, "-m", "fakeupstream", "--port", str(args.upstream_port)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        line = fake.stdout.readline().strip()
        if not line:
            sys.exit("the bundled fake upstream did not start")
        os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{args.upstream_port}/v1"
        print(
            "\n*** OPENAI_API_KEY is not set: answers come from the bundled FAKE upstream "
            f"({os.environ['OPENAI_BASE_URL']}), which echoes your last message.\n"
            "    Set OPENAI_API_KEY for real answers.\n",
            flush=True,
        )

    try:
        manage("migrate", "--noinput", "-v", "0")
        manage("collectstatic", "--noinput", "-v", "0")
        password = secrets.token_urlsafe(12)
        created = subprocess.run(
            [PY, "manage.py", "shell", "-v", "0", "-c", (
                "from django.contrib.auth import get_user_model as g; U=g(); "
                "import sys; exists=U.objects.filter(username='admin').exists(); "
                f"exists or U.objects.create_superuser('admin', '', '{password}'); sys.stdout.write(str(exists))"
            )],
            cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE,
        ).stdout.strip() == "False"  # fmt: skip
        raw_key = manage("create_api_key", "demo", capture=True).strip().splitlines()[-1]
        base = f"http://localhost:{args.port}"
        print(f"""
Tollgate is starting on {base}

Demo key (shown once): {raw_key}

  curl {base}/v1/chat/completions \\
    -H "Authorization: Bearer {raw_key}" -H "Content-Type: application/json" \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='{raw_key}'); \\
print(c.chat.completions.create(model='gpt-4o-mini', messages=[{{'role': 'user', 'content': 'Hello'}}]))"

Admin: {base}/admin/  {"user admin, password " + password if created else "(user admin exists already)"}
""", flush=True)  # fmt: skip
        server = subprocess.Popen(
            [PY, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "--bind", f"0.0.0.0:{args.port}"], cwd=ROOT
        )
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.send_signal(signal.SIGTERM)
            return server.wait()
    finally:
        if fake is not None:
            fake.terminate()
            fake.wait()


if __name__ == "__main__":
    sys.exit(main())
