"""Talking to auth: the API client, joining, certificate renewal, the API's typed models."""
