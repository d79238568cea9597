"""lm_service/engine"""
