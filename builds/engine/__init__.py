"""Slipway's deploy engine: plain Python, no Django.

Inputs are dataclasses; progress and log lines leave through callbacks; failures are
``UserError`` (something the person deploying can act on) or ``InternalError`` (ours).
"""
