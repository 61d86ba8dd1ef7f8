#!/bin/sh
# The container's entry point: apply migrations, then run the command (by default the same
# `gunicorn -c config/gunicorn.conf.py` CI runs natively). With several instances, run
# `python manage.py migrate` once before starting them: a migrate with nothing to apply is a no-op.
set -e
python manage.py migrate --noinput
exec "$@"
