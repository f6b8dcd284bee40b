"""Bring-up of the LDA suite: the lda-launch runner and the ROS 2 self-test nodes."""
