"""Small pure helpers shared by the agent, the control plane and kumactl.

Standard library only: the agent imports these and must stay light (no pydantic, no grpc).
"""
