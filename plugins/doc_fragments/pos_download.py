# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The download options pos_package and pos_data_sync share (module_utils/pos_download.DOWNLOAD_OPTIONS)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  staging_dir:
    description: Where downloads are kept until installed.
    type: str
    default: /var/lib/pos/staging
  retries:
    description: How many times a broken download is resumed within this run.
    type: int
    default: 3
  retry_delay:
    description: Seconds before the first retry; each further retry waits that much longer.
    type: float
    default: 2
"""
