"""lm_service"""
