"""skyward_ray.emulator"""
