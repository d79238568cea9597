"""lm_service/models"""
