"""encoder_service"""
