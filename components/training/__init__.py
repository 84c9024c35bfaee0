"""components.training"""
