"""skyward_ray.compute"""
