"""The device farm: benchmark backends (LiteRT, adb), result types, log parser, pools."""
