"""Bring-up of the LDA suite: the lda-launch launcher, the demo and the ROS 2 self-test nodes."""
