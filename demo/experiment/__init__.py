"""The backpressure experiment: config, wire format, pacing, recorder, sender, receiver,
orchestration, and its commands (``run``, ``send``, ``receive``, ``plot``, ``report``).

Only this subpackage and the lecture touch sockets; both use :mod:`bufdemo.probes` for
every getsockopt/ioctl.
"""
