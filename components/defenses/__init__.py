"""components.defenses"""
