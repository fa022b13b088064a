"""Transports: how uploads, cut gradients and model weights travel between the clients and the server, in one
process or across torch.distributed ranks, behind the flow's Transport interface."""
