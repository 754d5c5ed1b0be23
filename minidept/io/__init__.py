"""Files and the Hub around the core: backbones by name, adapters (minidept's and PEFT's), training states."""
