"""The socket lecture: the servers (accept-then-fork, accept-then-thread, select, poll,
epoll), a line client, a load generator that compares the servers' cost, and the lab
experiments that measure the lecture's claims on this kernel.
"""
