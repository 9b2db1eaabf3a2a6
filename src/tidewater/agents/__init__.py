"""Site agents: batch jobs on a site's scheduler, reconciled with the controller."""
