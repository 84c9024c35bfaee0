"""components.attacks"""
