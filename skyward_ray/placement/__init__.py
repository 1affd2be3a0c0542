"""skyward_ray.placement"""
