"""components.reporting"""
