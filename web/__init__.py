"""The browser page's files, installed as package data of ``fer_sdk.web`` (served by ``fer-sdk web``)."""
