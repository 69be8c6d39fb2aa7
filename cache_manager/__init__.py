"""cache_manager"""
