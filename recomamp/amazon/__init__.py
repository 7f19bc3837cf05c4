"""Adapters for Amazon: Login with Amazon (tokens) and the AMC reporting API."""
