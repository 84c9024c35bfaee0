"""components.models"""
