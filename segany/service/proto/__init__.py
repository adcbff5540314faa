"""Generated protobuf and gRPC modules for segany.v1 (scripts/gen_proto.py); do not edit."""
