"""skyward_ray.provider"""
