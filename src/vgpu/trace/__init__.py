"""`vgpu trace`: when, where and why GPU libraries load, in a program and every process it starts.

``recorder`` runs the command under the loader-audit library; ``report`` turns the
per-process records into processes, loads, failures and a diagnosis; ``render`` shows
them in the terminal, as HTML and as JSON.
"""
