"""The relay keeps no models of its own: usage lives in `usage`, limit counters in `metering`.

Its migrations stay: they created the tables that `usage` and `metering` took over (0005).
"""
