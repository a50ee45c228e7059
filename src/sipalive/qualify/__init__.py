"""qualify"""
