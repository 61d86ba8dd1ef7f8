"""The admin login's brute-force guard: django-axes in front of Django's ModelBackend."""

from axes.backends import AxesStandaloneBackend


class AdminLoginBackend(AxesStandaloneBackend):
    """Refuses a login for a username+address that axes has locked out; otherwise lets the next backend decide.

    Axes raises on any `authenticate()` call without a request. A login over HTTP (the admin form) always has
    one; calls without one come from code in the process itself (tests' `Client.login`, shell scripts), which
    no attacker can make, so they are passed on to ModelBackend instead of failing.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
