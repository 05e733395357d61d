"""`vgpu install` / `vgpu uninstall`: put the vgpu libraries where applications look.

``layout`` decides where (the distribution's library folder, Ollama's ``cuda_v*``
folders, systemd); ``changes`` applies a plan with a manifest and backups so that
``uninstall`` restores exactly what was there.
"""
